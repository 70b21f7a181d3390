"""Screens: the catalog browser, Generate, Sandbox, Settings, and the modal dialogs."""

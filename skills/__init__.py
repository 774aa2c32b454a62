"""Example skills: the Markdown skill files beside this module, and the Python code the python ones call.

A package, so that the default allow-list ``WRE_PYTHON_SKILL_MODULES=skills`` covers ``skills.examples``.
"""

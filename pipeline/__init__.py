"""Recipes: one YAML file names the model, the data, the QA window and the steps; `run_recipe` executes it.

`recipe` parses a file once into typed step configs, `records` decides when a made model can be reused, `make` and
`train` are the steps that make models, `measure` scores and times them, `report` assembles the report, and `run`
drives the steps in order.
"""

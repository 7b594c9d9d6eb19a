"""Batch features: the PySpark snapshot job, the Feast store around it, and the `features` stage.

Modules: ``schema`` (table layouts and weights), ``schedule`` (snapshot times), ``batch`` (the Spark job),
``store`` (Feast), ``stage`` (``run_features``), ``online_read`` (the online store's tables read directly),
``packed`` / ``packed_store`` (one packed value per entity for serving). Nothing heavy is imported here.
"""

"""Data: the shared feature spec, synthetic CT, preprocessing, grain pipelines."""

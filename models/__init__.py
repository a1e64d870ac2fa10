"""Shipped trained models (ONNX files + model cards), installed as package data."""

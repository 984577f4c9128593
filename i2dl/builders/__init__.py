"""Whole builders beside the pixel classification: OBIA (segments) and autocontext."""

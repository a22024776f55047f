"""Experiments: a matrix of methods x settings x seeds on one starting model, and its reports."""

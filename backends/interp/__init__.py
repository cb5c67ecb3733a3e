"""dplang.backends.interp"""

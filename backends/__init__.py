"""dplang.backends"""

"""dplang.passes"""

"""dplang.ir"""

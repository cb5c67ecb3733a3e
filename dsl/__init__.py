"""dplang.dsl"""

"""dplang.stdlib"""

"""Lava processes and process models of this project.

Kept in a folder of their own because Lava's compiler imports every module in the folder
of a process class when it searches for process models; these modules import only Lava
and numpy, so that search finds them and nothing else.
"""

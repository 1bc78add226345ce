"""Cost before compute: the work of every job of the workflow, its time and memory.

`model` (torch-free) counts each job's work and turns it into seconds and bytes; `workflow`
(torch-free, imported by the workflow's plan in pdiff/plan/ to size every job's SLURM
resources) builds it from the config alone; `measure` times the units on this machine; `plan`
runs the workflow's dry run and prints `pdiff plan-cost`'s table.
"""

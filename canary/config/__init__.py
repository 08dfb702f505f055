"""routes.yaml -> frozen dataclasses, in layers that each import only the ones before:

model      the frozen dataclasses (defaults, masked secrets)
checks     typed reads of the raw tree that record located problems
validate   the raw tree -> the model, every problem reported at once
loader     the file -> the raw tree (size/node caps, ${VAR}, duplicate keys, lines);
           ``load_config`` is the entry point
store      the current config and its reload (keeping the last good one)
"""

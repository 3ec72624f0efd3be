"""The lowest layer, shared by every stage and command, one module per job:

* :mod:`archbench.console.errors`: how an expected failure is reported (one line, exit code 1), ``UsageError``;
* :mod:`archbench.console.args`: ``key=value`` command lines declared by a dataclass, with generated ``--help``;
* :mod:`archbench.console.logs`: where log lines go;
* :mod:`archbench.console.progress`: the one progress bar of each long phase (tqdm on stderr, with an ETA);
* :mod:`archbench.console.files`: atomic file writing;
* :mod:`archbench.console.lifeline`: a worker process dies with the process that started it (kill -9 included);
* :mod:`archbench.console.machine`: the machine's load average, which every published number states.

Import from the job's module.
"""

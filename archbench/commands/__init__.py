"""Every ``python -m archbench.X`` command, one thin module each: parse ``key=value`` arguments into a dataclass
(:mod:`archbench.console.args`), call one library function of a stage, print the result; a bad argument or an
expected failure is one line on stderr and exit code 1 (:mod:`archbench.console.errors`).

``archbench/<command>.py`` and the ``__main__`` of ``archbench.data`` and ``archbench.study`` only call the
``main`` of the module here, so ``python -m`` keeps its names while the commands live in one place.
"""

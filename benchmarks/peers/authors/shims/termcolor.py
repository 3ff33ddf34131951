"""Stand-in for ``termcolor`` (not installed in the zoo's environment): ``cprint`` prints plainly."""


def colored(text, *args, **kwargs):
    return str(text)


def cprint(text, *args, **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if k in ("sep", "end", "file", "flush")}
    print(text, **kwargs)

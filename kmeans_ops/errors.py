"""The one error type for bad input: it names the file and the problem."""


class InputError(Exception):
    """One input (image or points/clusters file) cannot be used. ``str()`` names the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

"""The one error the converter raises for bad input: the CLI prints it and exits with 2."""


class ConvertError(Exception):
    """Bad input (file, key, shape, plan): nothing has been written when this is raised."""

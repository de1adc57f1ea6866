"""postdeploy demo"""


def run(keep: bool = False) -> int:
    return 0

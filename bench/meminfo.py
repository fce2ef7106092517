"""The machine's memory in use, as the bench scripts measure it: MemTotal - MemAvailable."""


def used():
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            info[k] = int(v.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]

"""benchmarks.storage_placement: the 2B stage's checkpoints and export on a 64 GB disk and in memory."""

from benchmarks.storage_placement import choose

GB = 10**9
SIZES = {True: (37 * GB, 45 * GB), False: (29 * GB, 37 * GB)}  # the 2B stage with and without EMA


def test_a_large_disk_holds_everything():
    got = choose(SIZES, disk_free=200 * GB, memory_room=0)
    assert (got.checkpoints, got.export, got.ema) == ("disk", "disk", True)


def test_checkpoints_go_to_memory_when_the_disk_holds_only_the_export():
    got = choose(SIZES, disk_free=50 * GB, memory_room=80 * GB)
    assert (got.checkpoints, got.export, got.ema) == ("memory", "disk", True)


def test_both_in_memory_when_the_disk_is_full_of_weights_and_video():
    got = choose(SIZES, disk_free=20 * GB, memory_room=90 * GB)
    assert (got.checkpoints, got.export, got.ema) == ("memory", "memory", True)


def test_the_ema_goes_before_the_run_does():
    got = choose(SIZES, disk_free=45 * GB, memory_room=64 * GB)  # a tmpfs of half the machine's 128 GB
    assert (got.checkpoints, got.export, got.ema) == ("memory", "disk", False)
    assert (got.checkpoint_gb, got.export_gb) == (29.0, 37.0)


def test_nothing_fits():
    assert choose(SIZES, disk_free=10 * GB, memory_room=20 * GB) is None

"""Support code of the test suite, one module per concern:

  paths    bytes paths and their readable form
  run      running mkerofs, the error contract of a failed run, leftover files
  mounts   kernel mounts, loop devices, tmpfs/bind mounts, dmesg, fsck.erofs
  oracle   the independent EROFS parser (imports nothing of mkerofs) and glibc's regex
  trees    source-tree builders
  compare  source tree against mounted image
"""

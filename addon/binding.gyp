{
  "targets": [
    {
      "target_name": "ckptfs",
      "sources": [
        "src/module.c",
        "src/tracer.c",
        "src/freeze.c",
        "src/regs.c",
        "src/seccomp.c",
        "src/inject.c",
        "src/memory.c",
        "src/checksum.c",
        "src/files.c",
        "src/sockdiag.c",
        "src/sockpeek.c",
        "src/inetsock.c",
        "src/rawsock.c",
        "src/restore.c",
        "src/tree.c",
        "src/treeread.c",
        "src/uffd.c"
      ],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      "cflags_c": ["-std=c11", "-Wall", "-Wextra"]
    },
    {
      # The restorer stub (docs/RESTORE.md): a static executable, build/Release/restorer.
      "target_name": "restorer",
      "type": "executable",
      "sources": ["stub/restorer.c", "stub/tree.c"],
      "cflags_c": ["-std=c11", "-Wall", "-Wextra"],
      "ldflags": ["-static"]
    }
  ]
}

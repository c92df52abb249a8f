{
  "targets": [
    {
      "target_name": "blksnapfs_fuse3",
      "sources": [
        "native/fuse3/addon.c",
        "native/fuse3/buffers.c",
        "native/fuse3/fastpath.c",
        "native/fuse3/ops.c",
        "native/fuse3/session.c",
        "native/fuse3/slots.c",
        "native/fuse3/watchdog.c"
      ],
      "cflags": ["-Wall", "-Wextra", "-Werror", "-O2", "-D_GNU_SOURCE", "<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}

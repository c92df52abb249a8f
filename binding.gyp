{
  "variables": {
    "hardening_cflags": [
      "-Wall", "-Wextra", "-Werror", "-O2", "-D_GNU_SOURCE",
      "-fstack-protector-strong", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=2"
    ],
    "hardening_ldflags": ["-Wl,-z,relro,-z,now", "-Wl,-z,noexecstack"]
  },
  "targets": [
    {
      "target_name": "blksnapfs_fuse3",
      "sources": [
        "native/fuse3/addon.c",
        "native/fuse3/buffers.c",
        "native/fuse3/fastpath.c",
        "native/fuse3/ops.c",
        "native/fuse3/own-mount.c",
        "native/fuse3/session.c",
        "native/fuse3/slots.c",
        "native/fuse3/watchdog.c"
      ],
      "cflags": ["<@(hardening_cflags)", "-fPIC", "<!@(pkg-config --cflags fuse3)"],
      "ldflags": ["<@(hardening_ldflags)"],
      "libraries": ["<!@(pkg-config --libs fuse3)"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "blksnapfs-watchdog",
      "type": "executable",
      "sources": [
        "native/fuse3/own-mount.c",
        "native/fuse3/watchdog-main.c"
      ],
      "cflags": ["<@(hardening_cflags)", "-fPIE"],
      "ldflags": ["<@(hardening_ldflags)", "-pie"]
    }
  ]
}

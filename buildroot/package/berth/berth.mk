################################################################################
#
# berth
#
################################################################################

BERTH_VERSION = 0.1.0
# The workspace this tree lives in.
BERTH_SITE = $(BR2_EXTERNAL_BERTH_PATH)/..
BERTH_SITE_METHOD = local
BERTH_LICENSE = Apache-2.0
BERTH_LICENSE_FILES = Cargo.toml
# post-image assembles the disk with the host tool, berth-image.
BERTH_DEPENDENCIES = host-berth

# The workspace root is a virtual manifest, so `cargo install --path ./` (the default
# install step) cannot be used: build the named binaries and install them where Berth
# expects them.
BERTH_CARGO_BUILD_OPTS = --bin berth-init --bin berthctl --bin berth-runtime

define BERTH_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/berth-init \
		$(TARGET_DIR)/sbin/init
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/berthctl \
		$(TARGET_DIR)/usr/bin/berthctl
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/release/berth-runtime \
		$(TARGET_DIR)/usr/bin/berth-runtime
endef

# The host tool: berth-image, which post-image assembles the disk with.
HOST_BERTH_CARGO_BUILD_OPTS = --bin berth-image

define HOST_BERTH_INSTALL_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/release/berth-image $(HOST_DIR)/bin/berth-image
endef

$(eval $(cargo-package))
$(eval $(host-cargo-package))

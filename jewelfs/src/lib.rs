//! The JewelFS client: `~/Jewel` as a FUSE drive synced through the JewelFS service.
//!
//! - [`core`]: the FUSE-free async core, tested without mounting: the tree cache
//!   (`core/tree.rs`), the journal (`core/journal.rs`), inode numbers (`core/inodes.rs`),
//!   open files (`core/open_files.rs`), the block cache (`core/blocks.rs`), the uploader
//!   (`core/uploader.rs`), the listener (`core/listener.rs`), the service's API and its HTTP
//!   client (`core/api.rs`);
//! - [`sources`]: where change notifications come from (the embedded service's long-poll,
//!   the device's SQS queue), given only the API;
//! - [`fuse`]: the thin `fuser` adapter and the FUSE session (the only module that knows
//!   `fuser`);
//! - [`login`]: `login`, linking this machine with a code;
//! - [`devices`]: `devices`, the account's machines (list, unlink);
//! - [`mount`]: the commands (`mount`, `unmount`, `status`) that `main.rs` parses, and
//!   [`mount::start`], the client started without the kernel (what `mount` runs under its
//!   FUSE session, and what the model test runs);
//! - [`status`]: how a running mount publishes its status (a file, a socket);
//! - [`service`]: `service install` / `uninstall`, the systemd user unit that mounts at login;
//! - [`versions`]: `versions` and `restore-version`, a file's earlier contents.

pub mod core;
pub mod devices;
pub mod fuse;
pub mod login;
pub mod mount;
pub mod service;
pub mod sources;
pub mod status;
pub mod versions;

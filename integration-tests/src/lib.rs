//! Helpers shared by the end-to-end tests: start a real server, add users, mount clients.

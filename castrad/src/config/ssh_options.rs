//! Which ssh `-o` options a project file may set: the allow-list lives in castra-api
//! (`castra_api::ssh`), because castractl checks the options castrad hands it against the
//! same list before it runs ssh or sftp with them.

pub use castra_api::ssh::{ALLOWED, allowed, why_not};

//! The JSON-RPC edge: the Unix-socket server, the method table and the error mapping. This is
//! the only place that converts internal types into `castra_api` wire types.

pub mod console;
pub mod error;
pub mod methods;
pub mod server;

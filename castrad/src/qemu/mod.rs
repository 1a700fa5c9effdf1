//! QEMU: the command line (`argv`), the accelerator choice (`accel`), the QMP client (`qmp`)
//! and the process lifecycle: overlays, launch, re-adoption, cooperative shutdown (`process`).

pub mod accel;
pub mod argv;
pub mod process;
pub mod qmp;

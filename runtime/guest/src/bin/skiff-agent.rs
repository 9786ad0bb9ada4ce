//! `skiff-agent`: the init of a Skiff task microVM (`rdinit=/init` in its initramfs).

fn main() {
    if let Err(e) = skiff_guest::agent::run() {
        // The serial console (the VM shim keeps it as console.log in the task's state).
        eprintln!("skiff-agent: {e}");
    }
    skiff_guest::agent::power_off();
}

//! `shg-init`, PID 1 of every service container (`init`) and the door `shg exec` goes through
//! (`enter`): bind-mounted read-only at `/.shg/init`. A binary of its own, beside `shg`, so
//! that every start execs a small file rather than the whole agent and every container maps
//! little; the work is `runtime::init`'s.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(runtime::init::main_with_args(&args))
}

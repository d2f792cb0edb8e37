//! Progress bars that appear only when a person is watching.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar over `len` items with rate and ETA (a plain count with rate when `len` is 0: not
/// known), drawn on stderr when it is a terminal and hidden otherwise (logs and CI stay clean).
pub fn progress_bar(len: u64, message: &'static str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target((len > 0).then_some(len), target);
    let template = if len > 0 {
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta})"
    } else {
        "{msg} [{elapsed_precise}] {pos} ({per_sec})"
    };
    let style = ProgressStyle::with_template(template).expect("the template is valid");
    bar.set_style(style);
    bar.set_message(message);
    bar
}

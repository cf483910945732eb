//! The font of every rendered text: DejaVu Sans, embedded in the binary (its licence,
//! `assets/DejaVuSans.LICENSE.txt`, permits this), so PNGs get text without system fonts.

use std::sync::Once;

/// The family name plotters is asked for; [`register`] maps it to the embedded font.
pub const FAMILY: &str = "sans-serif";

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font with plotters (idempotent).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use plotters::style::FontStyle;
        // The bytes are a valid TrueType font shipped with the crate; a failure here would be a
        // packaging bug caught by the plot tests, and the renderer then reports missing glyphs.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

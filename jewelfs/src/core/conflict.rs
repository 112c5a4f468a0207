//! Conflict naming: `stem (conflicted copy <device> YYYY-MM-DD HHMMSS).ext`.
//!
//! The extension stays last so the copy still opens in the same app. A leading dot is not an
//! extension (`.bashrc` has none), and neither is a trailing one. Times are UTC and carry no
//! colons (they are not allowed in names on some systems the copy may travel to). When the
//! name is taken a counter follows the time: `... HHMMSS 2).ext`. The result always passes
//! [`jewel_wire::check_name`]: a too-long stem is shortened on a character boundary.

use jewel_wire::MAX_NAME_BYTES;

/// Splits a name into stem and extension (with its dot), as a person reads it.
pub fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(0) | None => (name, ""),
        Some(i) if i + 1 == name.len() => (name, ""),
        Some(i) => (&name[..i], &name[i..]),
    }
}

/// Formats nanoseconds since the epoch as `YYYY-MM-DD HHMMSS` in UTC.
pub fn format_utc(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The conflict copy name for `name`, made by `device` at `now_ns`; `counter` ≥ 2 is added
/// when the plain conflict name is taken.
pub fn conflict_name(name: &str, device: &str, now_ns: i64, counter: u32) -> String {
    let (stem, ext) = split_ext(name);
    let device: String = device.chars().filter(|c| *c != '/' && *c != '\0').collect();
    let mut tag = format!(" (conflicted copy {device} {}", format_utc(now_ns));
    if counter >= 2 {
        tag.push_str(&format!(" {counter}"));
    }
    tag.push(')');
    let budget = MAX_NAME_BYTES.saturating_sub(tag.len() + ext.len());
    let mut stem = stem.to_string();
    while stem.len() > budget {
        stem.pop();
    }
    format!("{stem}{tag}{ext}")
}

/// The first conflict name for which `taken` says no.
pub fn free_conflict_name(
    name: &str,
    device: &str,
    now_ns: i64,
    taken: impl Fn(&str) -> bool,
) -> String {
    let mut counter = 1;
    loop {
        let candidate = conflict_name(name, device, now_ns, counter);
        if !taken(&candidate) {
            return candidate;
        }
        counter += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-25 12:34:56 UTC
    const T: i64 = 1_795_610_096 * 1_000_000_000;

    #[test]
    fn dates_are_utc_without_colons() {
        assert_eq!(format_utc(0), "1970-01-01 000000");
        assert_eq!(format_utc(T), "2026-11-25 123456");
        assert_eq!(format_utc(951_782_400 * 1_000_000_000), "2000-02-29 000000");
    }

    #[test]
    fn extension_stays_last() {
        assert_eq!(
            conflict_name("report.docx", "laptop", T, 1),
            "report (conflicted copy laptop 2026-11-25 123456).docx"
        );
        assert_eq!(
            conflict_name("archive.tar.gz", "pc", T, 1),
            "archive.tar (conflicted copy pc 2026-11-25 123456).gz"
        );
        assert_eq!(
            conflict_name(".bashrc", "pc", T, 1),
            ".bashrc (conflicted copy pc 2026-11-25 123456)"
        );
        assert_eq!(
            conflict_name("Makefile", "pc", T, 1),
            "Makefile (conflicted copy pc 2026-11-25 123456)"
        );
        assert_eq!(
            conflict_name("odd.", "pc", T, 1),
            "odd. (conflicted copy pc 2026-11-25 123456)"
        );
    }

    #[test]
    fn counter_when_taken() {
        let first = conflict_name("a.txt", "pc", T, 1);
        let name = free_conflict_name("a.txt", "pc", T, |n| n == first);
        assert_eq!(name, "a (conflicted copy pc 2026-11-25 123456 2).txt");
    }

    #[test]
    fn long_names_stay_valid() {
        let long = format!("{}.txt", "é".repeat(126));
        let name = conflict_name(&long, "pc", T, 1);
        assert!(
            jewel_wire::check_name(&name).is_ok(),
            "{} bytes",
            name.len()
        );
        assert!(name.ends_with(").txt"));
    }
}

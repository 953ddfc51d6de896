//! Times as the log writes them (RFC 3339, UTC, nanoseconds) and as users give them
//! (`--since 2026-12-04T10:00:00Z`, `--since 5m`).

/// Nanoseconds since the Unix epoch -> `2026-12-04T10:00:00.000000000Z`.
pub fn rfc3339(nanos: i128) -> String {
    // Every time a log holds (years 1678-2261) fits in i64 nanoseconds, where the
    // arithmetic is native (i128 division is a library call); beyond that, the general path.
    match i64::try_from(nanos) {
        Ok(n) => rfc3339_i64(n),
        Err(_) => rfc3339_i128(nanos),
    }
}

fn rfc3339_i64(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    // civil_from_days, in i64.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    // i64 nanoseconds span the years 1677-2262: four digits.
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = String::with_capacity(30);
    push_digits(&mut s, y as u32, 4);
    s.push('-');
    push_digits(&mut s, m, 2);
    s.push('-');
    push_digits(&mut s, d, 2);
    s.push('T');
    push_digits(&mut s, sod / 3600, 2);
    s.push(':');
    push_digits(&mut s, sod / 60 % 60, 2);
    s.push(':');
    push_digits(&mut s, sod % 60, 2);
    s.push('.');
    push_digits(&mut s, frac, 9);
    s.push('Z');
    s
}

/// `n` in decimal, zero-padded to `width` digits (`n` has at most that many).
fn push_digits(s: &mut String, n: u32, width: u32) {
    for i in (0..width).rev() {
        s.push(char::from(b'0' + (n / 10u32.pow(i) % 10) as u8));
    }
}

fn rfc3339_i128(nanos: i128) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

fn civil_from_days(z: i128) -> (i128, u32, u32) {
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

fn days_from_civil(y: i128, m: u32, d: u32) -> i128 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i128;
    let doy = (153 * mp + 2) / 5 + d as i128 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn now_nanos() -> i128 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Parses an RFC 3339 time (`Z` or `±hh:mm`, optional fraction) or a duration before
/// `now` (`30s`, `5m`, `2h`, `1d`) into nanoseconds since the epoch.
pub fn parse(s: &str, now: i128) -> Option<i128> {
    let s = s.trim();
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c)) {
        let n: i128 = s[..s.len() - 1].parse().ok()?;
        let mult: i128 = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86_400,
        };
        return Some(now - n * mult * 1_000_000_000);
    }
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, mo, d) = (num(0..4)? as i128, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac: i128 = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut f = r[..digits.min(9)].to_string();
        while f.len() < 9 {
            f.push('0');
        }
        frac = f.parse().ok()?;
        rest = &r[digits..];
    }
    let offset: i128 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i128 = rest.get(1..3)?.parse().ok()?;
            let om: i128 = rest.get(4..6)?.parse().ok()?;
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + (h * 3600 + mi * 60 + se) as i128 - offset;
    Some(secs * 1_000_000_000 + frac)
}

/// `Dec  4 19:21:49.588` (hubble's compact time) from a log time.
pub fn compact(t: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = t
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)));
    match (
        month,
        t.get(8..10).and_then(|d| d.parse::<u32>().ok()),
        t.get(11..23),
    ) {
        (Some(m), Some(d), Some(hms)) => format!("{m} {d:>2} {hms}"),
        _ => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// The i64 path writes what the general one does, over the whole range a log can hold
    /// and across its edges.
    #[test]
    fn the_native_path_agrees_with_the_general_one() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut values = vec![0i64, -1, 1, 999_999_999, 1_000_000_000, i64::MIN, i64::MAX];
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x as i64);
            values.push((x % 4_000_000_000_000_000_000) as i64);
        }
        for n in values {
            assert_eq!(rfc3339_i64(n), rfc3339_i128(i128::from(n)), "{n}");
        }
    }

    #[test]
    fn round_trips_and_relative_times() {
        let t = "2026-12-04T19:21:49.588123456Z";
        let n = parse(t, 0).unwrap();
        assert_eq!(rfc3339(n), t);
        assert_eq!(parse("2026-12-04T20:21:49.588123456+01:00", 0), Some(n));
        assert_eq!(parse("2026-12-04T19:21:49Z", 0), Some(n - 588_123_456));
        assert_eq!(parse("5m", n), Some(n - 300_000_000_000));
        assert_eq!(parse("yesterday", n), None);
        assert_eq!(compact(t), "Dec  4 19:21:49.588");
    }
}

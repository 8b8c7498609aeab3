//! The date-time of RFC 5322 (`Date:`, and the dates of delivery reports), written in UTC.

use std::time::SystemTime;

/// `at` as an RFC 5322 date-time in UTC, e.g. `Mon, 04 May 2026 10:15:30 +0000`.
pub fn rfc5322_date(at: SystemTime) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] +0000"
    );
    time::OffsetDateTime::from(at)
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_written_as_rfc_5322_says() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_777_889_730);
        assert_eq!(rfc5322_date(at), "Mon, 04 May 2026 10:15:30 +0000");
    }
}

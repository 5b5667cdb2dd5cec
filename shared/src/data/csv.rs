//! Loading a labelled CSV file into a [`Dataset`].
//!
//! The format is the one [`Dataset::to_csv`] writes and a spreadsheet exports: a header row naming
//! the columns, one label column (chosen by name, by default the last), and every other column a
//! finite number. Labels are strings; the classes are the distinct labels in the file, ordered by
//! [`sort_class_names`]. Every problem is an [`Error::Csv`] naming the file, the 1-based line (the
//! header is line 1) and, where one is at fault, the column by name and number.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use ndarray::Array2;

use super::{sort_class_names, Dataset};
use crate::error::{Error, Result};

/// Loads a labelled CSV file.
///
/// `label_column` names the column holding the class labels; `None` takes the last column. All
/// other columns are `f32` features. Cells are trimmed of surrounding spaces and blank lines are
/// skipped. Classes are the distinct label strings present (so `1` and `1.0` are two classes),
/// ordered by [`sort_class_names`]; call [`Dataset::remap_classes`] to align them with another
/// participant's class list.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::Csv`] for an empty file, a header with no
/// data rows, duplicate column names, a missing label column (the message lists the columns), a
/// row with the wrong number of fields, an empty label, or a feature cell that is not a finite
/// number (`nan`, `inf` and values beyond `f32` are rejected).
pub fn load_csv(path: &Path, label_column: Option<&str>) -> Result<Dataset> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_csv(BufReader::new(file), path, label_column)
}

/// Like [`load_csv`], reading from any reader; `origin` is only used to name the source in errors
/// (a file name, or something like `upload.csv` for in-memory data).
pub fn read_csv<R: Read>(
    mut reader: R,
    origin: &Path,
    label_column: Option<&str>,
) -> Result<Dataset> {
    // The whole input is kept so that line numbers can be corrected (see `line_of`); the parsed
    // dataset is about as large anyway.
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(|source| Error::Io {
        path: origin.to_path_buf(),
        source,
    })?;
    let csv_err = |line: u64, message: String| Error::Csv {
        path: origin.to_path_buf(),
        line,
        message,
    };
    let mut records = ::csv::ReaderBuilder::new()
        // Header and field counts are checked here, to report them with our own messages.
        .has_headers(false)
        .flexible(true)
        .trim(::csv::Trim::All)
        .from_reader(bytes.as_slice())
        .into_records();

    let header = match records.next() {
        None => {
            return Err(csv_err(
                1,
                "empty file: expected a header row naming the columns".into(),
            ))
        }
        Some(record) => record.map_err(|e| from_csv_error(origin, e, 1))?,
    };
    let header_line = line_of(&bytes, &header, 1);
    let columns: Vec<String> = header.iter().map(str::to_owned).collect();

    let mut seen = HashMap::new();
    for (i, name) in columns.iter().enumerate() {
        if let Some(first) = seen.insert(name.as_str(), i) {
            return Err(csv_err(
                header_line,
                format!(
                    "duplicate column name `{name}` (columns {} and {})",
                    first + 1,
                    i + 1
                ),
            ));
        }
    }

    let label_idx = match label_column {
        Some(name) => columns.iter().position(|c| c == name).ok_or_else(|| {
            csv_err(
                header_line,
                format!(
                    "no label column `{name}`; available columns: {}",
                    quoted_list(&columns)
                ),
            )
        })?,
        // The csv reader never yields a record with zero fields, but stay total.
        None => columns
            .len()
            .checked_sub(1)
            .ok_or_else(|| csv_err(header_line, "the header names no columns".into()))?,
    };
    if columns.len() < 2 {
        return Err(csv_err(
            header_line,
            format!(
                "no feature columns: the header has only the label column `{}`",
                columns[label_idx]
            ),
        ));
    }

    let n_cols = columns.len();
    let mut values: Vec<f32> = Vec::new();
    // Labels are interned in first-seen order, then renumbered once all classes are known.
    let mut label_ids: HashMap<String, usize> = HashMap::new();
    let mut raw_labels: Vec<usize> = Vec::new();
    let mut line = header_line;
    for record in records {
        let record = record.map_err(|e| from_csv_error(origin, e, line + 1))?;
        line = line_of(&bytes, &record, line + 1);
        if record.len() != n_cols {
            return Err(csv_err(
                line,
                format!(
                    "expected {n_cols} fields (one per header column), found {}",
                    record.len()
                ),
            ));
        }
        for (i, cell) in record.iter().enumerate() {
            let column = || format!("column `{}` (column {})", columns[i], i + 1);
            if i == label_idx {
                if cell.is_empty() {
                    return Err(csv_err(line, format!("empty label in {}", column())));
                }
                let next = label_ids.len();
                raw_labels.push(*label_ids.entry(cell.to_owned()).or_insert(next));
                continue;
            }
            let value: f32 = cell
                .parse()
                .map_err(|_| csv_err(line, format!("{}: `{cell}` is not a number", column())))?;
            // `parse` accepts "nan" and "inf", and overflows to infinity beyond f32's range.
            if !value.is_finite() {
                return Err(csv_err(
                    line,
                    format!("{}: `{cell}` is not a finite number", column()),
                ));
            }
            values.push(value);
        }
    }
    if raw_labels.is_empty() {
        return Err(csv_err(
            header_line,
            "the header is not followed by any data rows".into(),
        ));
    }

    let mut class_names: Vec<String> = label_ids.keys().cloned().collect();
    sort_class_names(&mut class_names);
    let position: HashMap<&str, usize> = class_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut id_to_class = vec![0; label_ids.len()];
    for (name, &id) in &label_ids {
        id_to_class[id] = position[name.as_str()];
    }
    let labels: Vec<usize> = raw_labels.iter().map(|&id| id_to_class[id]).collect();
    let feature_names: Vec<String> = columns
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != label_idx)
        .map(|(_, n)| n.clone())
        .collect();
    let features = Array2::from_shape_vec((labels.len(), n_cols - 1), values)
        .map_err(|e| Error::Data(format!("{}: {e}", origin.display())))?;
    Dataset::new(features, labels, feature_names, class_names)
}

/// The 1-based line a record starts on.
///
/// The csv reader reports the position where it began looking for the record, which is before
/// any blank lines it then skipped; those are counted here (`\r\n`, `\n` or `\r` each ending one).
fn line_of(bytes: &[u8], record: &::csv::StringRecord, fallback: u64) -> u64 {
    let Some(position) = record.position() else {
        return fallback;
    };
    let start = usize::try_from(position.byte()).unwrap_or(usize::MAX);
    let mut line = position.line();
    let mut rest = bytes.get(start..).unwrap_or_default().iter().peekable();
    while let Some(&b) = rest.next() {
        match b {
            b'\n' => line += 1,
            b'\r' => {
                rest.next_if_eq(&&b'\n');
                line += 1;
            }
            _ => break,
        }
    }
    line
}

/// Maps a csv-crate error (bad UTF-8, a read failure) onto the crate's error with the same
/// file-and-line shape as the checks above.
fn from_csv_error(origin: &Path, err: ::csv::Error, fallback_line: u64) -> Error {
    let line = err.position().map_or(fallback_line, |p| p.line());
    let message = err.to_string();
    match err.into_kind() {
        ::csv::ErrorKind::Io(source) => Error::Io {
            path: origin.to_path_buf(),
            source,
        },
        _ => Error::Csv {
            path: origin.to_path_buf(),
            line,
            message,
        },
    }
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("`{n}` ({})", i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use tempfile::TempDir;

    /// Writes `text` to `name` in a fresh directory and loads it; the directory lives as long as
    /// the returned guard.
    fn load_text(name: &str, text: &str, label: Option<&str>) -> (TempDir, Result<Dataset>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let result = load_csv(&path, label);
        (dir, result)
    }

    /// The error message for `text`, checked to name the file and the line.
    fn error_at(text: &str, label: Option<&str>, line: u64) -> String {
        let (_dir, result) = load_text("bad-input.csv", text, label);
        let err = result.expect_err("expected an error");
        assert!(
            matches!(err, Error::Csv { line: l, .. } if l == line),
            "wrong line: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&format!("bad-input.csv:{line}:")), "{msg}");
        msg
    }

    #[test]
    fn loads_a_good_file() {
        let text =
            "a, species ,b\r\n1.5,setosa,-2\r\n\r\n 3e2 ,\"virginica\",0.25\r\n4,setosa,5\r\n";
        let (_dir, result) = load_text("good.csv", text, Some("species"));
        let d = result.unwrap();
        assert_eq!(d.feature_names, vec!["a", "b"]);
        assert_eq!(d.class_names, vec!["setosa", "virginica"]);
        assert_eq!(d.labels, vec![0, 1, 0]);
        assert_eq!(d.features, array![[1.5, -2.0], [300.0, 0.25], [4.0, 5.0]]);
    }

    #[test]
    fn integer_labels_sort_numerically_and_last_column_is_default() {
        let text = "x,y\n1,10\n2,9\n3,2\n4,10\n";
        let d = read_csv(text.as_bytes(), Path::new("mem.csv"), None).unwrap();
        assert_eq!(d.class_names, vec!["2", "9", "10"]);
        assert_eq!(d.labels, vec![2, 1, 0, 2]);
        assert_eq!(d.feature_names, vec!["x"]);
    }

    #[test]
    fn line_numbers_count_blank_lines_and_quoted_newlines() {
        let msg = error_at(
            "a,b,label\r\n1,2,x\r\n\r\n\n5,6,\"z\nz\"\n\n8,oops,w\n",
            None,
            8,
        );
        assert!(msg.contains("`oops`"), "{msg}");
        let msg = error_at("\n\na,b,label\n1,2\n", None, 4);
        assert!(msg.contains("found 2"), "{msg}");
    }

    #[test]
    fn empty_file_is_an_error() {
        let msg = error_at("", None, 1);
        assert!(msg.contains("empty file"), "{msg}");
    }

    #[test]
    fn header_without_rows_is_an_error() {
        let msg = error_at("a,b,label\n", None, 1);
        assert!(msg.contains("not followed by any data rows"), "{msg}");
    }

    #[test]
    fn non_numeric_cell_names_column_and_cell() {
        let msg = error_at("a,b,label\n1,2,x\n3,abc,y\n", None, 3);
        assert!(msg.contains("column `b` (column 2)"), "{msg}");
        assert!(msg.contains("`abc`"), "{msg}");
    }

    #[test]
    fn ragged_row_is_an_error() {
        let msg = error_at("a,b,label\n1,2,x\n3,y\n", None, 3);
        assert!(msg.contains("expected 3 fields"), "{msg}");
        assert!(msg.contains("found 2"), "{msg}");
    }

    #[test]
    fn missing_label_column_lists_columns() {
        let msg = error_at("a,b,label\n1,2,x\n", Some("class"), 1);
        assert!(msg.contains("`class`"), "{msg}");
        assert!(
            msg.contains("`a` (1)") && msg.contains("`b` (2)") && msg.contains("`label` (3)"),
            "{msg}"
        );
    }

    #[test]
    fn duplicate_column_names_are_an_error() {
        let msg = error_at("a,b,a,label\n1,2,3,x\n", None, 1);
        assert!(msg.contains("duplicate column name `a`"), "{msg}");
        assert!(msg.contains("columns 1 and 3"), "{msg}");
    }

    #[test]
    fn empty_label_is_an_error() {
        let msg = error_at("a,b,label\n1,2,x\n\n3,4,\n", None, 4);
        assert!(
            msg.contains("empty label in column `label` (column 3)"),
            "{msg}"
        );
    }

    #[test]
    fn non_finite_numbers_are_rejected() {
        for (cell, col) in [("nan", 1), ("inf", 1), ("-inf", 1), ("1e39", 1)] {
            let msg = error_at(&format!("f,g,label\n0,0,a\n{cell},0,b\n"), None, 3);
            assert!(msg.contains(&format!("column `f` (column {col})")), "{msg}");
            assert!(
                msg.contains(&format!("`{cell}` is not a finite number")),
                "{msg}"
            );
        }
    }

    #[test]
    fn header_with_only_the_label_is_an_error() {
        let msg = error_at("label\nx\n", None, 1);
        assert!(msg.contains("no feature columns"), "{msg}");
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.csv");
        let err = load_csv(&path, None).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.csv"));
    }

    #[test]
    fn to_csv_round_trips_exactly() {
        let features = array![
            [0.1f32, 1.0 / 3.0, -1e-20],
            [3.4e38, -0.0, 16777217.0],
            [f32::MIN_POSITIVE, 2.5, -7.0],
            [1e-45, 123456.79, 0.3],
        ];
        let d = Dataset::new(
            features,
            vec![1, 0, 2, 1],
            vec!["x y".into(), "\"q\"".into(), "c,d".into()],
            vec!["2".into(), "9".into(), "10".into()],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("round.csv");
        d.to_csv(&path).unwrap();
        let back = load_csv(&path, None).unwrap();
        assert_eq!(back, d);
        let bits = |x: &Dataset| x.features.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&d));
    }

    #[test]
    fn to_csv_refuses_a_feature_named_label() {
        let d = Dataset::new(
            array![[1.0f32]],
            vec![0],
            vec!["label".into()],
            vec!["a".into()],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = d.to_csv(&dir.path().join("x.csv")).unwrap_err();
        assert!(err.to_string().contains("`label`"), "{err}");
    }
}

//! The schema records are converted to: a table's columns in order, each with its
//! Hive type, as Firehose takes them from the Glue table its
//! `SchemaConfiguration` names (`StorageDescriptor.Columns` of `GetTable`, or of
//! `GetTableVersion` for a fixed `VersionId`), or as a table declared in Sluice's
//! configuration gives them. Partition keys are not columns of the written files
//! (query engines take them from the object's path), as on Firehose.

use serde_json::Value;

use crate::hive::HiveType;

/// More columns than this are refused: a schema comes from outside (a Glue API or
/// configuration), and every column costs a builder per batch.
pub const COLUMNS_MAX: usize = 10_000;

/// One column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name, in lower case, as Hive keeps column names.
    pub name: String,
    /// Its type.
    pub hive_type: HiveType,
}

/// A table's columns, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// The columns.
    pub columns: Vec<Column>,
}

/// Why a table cannot be converted to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The table has no columns to write.
    #[error("the table has no columns")]
    NoColumns,
    /// Over [`COLUMNS_MAX`] columns.
    #[error("the table has {0} columns, more than {COLUMNS_MAX}")]
    TooManyColumns(usize),
    /// Two columns with one name (names are case-insensitive).
    #[error("the column {0:?} appears twice")]
    DuplicateColumn(String),
    /// A column without a name or a type, or a description that is not a table.
    #[error("{0}")]
    Malformed(String),
    /// A column's type is not a Hive type this conversion reads.
    #[error("column {column:?}: {error}")]
    Type {
        /// The column.
        column: String,
        /// Why.
        error: crate::hive::TypeError,
    },
}

impl TableSchema {
    /// The schema of a Glue `Table` object (`GetTable`'s `Table`, or
    /// `GetTableVersion`'s `TableVersion.Table`).
    pub fn from_glue_table(table: &Value) -> Result<TableSchema, SchemaError> {
        let columns = table
            .get("StorageDescriptor")
            .and_then(|d| d.get("Columns"))
            .and_then(Value::as_array)
            .ok_or_else(|| SchemaError::Malformed("the table has no StorageDescriptor.Columns".into()))?;
        if columns.len() > COLUMNS_MAX {
            return Err(SchemaError::TooManyColumns(columns.len()));
        }
        let mut pairs = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let field = |key: &str| {
                column
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| SchemaError::Malformed(format!("column {} of the table has no {key}", i + 1)))
            };
            pairs.push((field("Name")?, field("Type")?));
        }
        TableSchema::declared(pairs)
    }

    /// The schema of a table given as `(name, type)` pairs (a table declared in
    /// Sluice's configuration).
    pub fn declared<'a>(columns: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<TableSchema, SchemaError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (name, type_text) in columns {
            if out.len() == COLUMNS_MAX {
                return Err(SchemaError::TooManyColumns(COLUMNS_MAX + 1));
            }
            let name = name.trim().to_lowercase();
            if name.is_empty() {
                return Err(SchemaError::Malformed(format!("column {} has an empty name", out.len() + 1)));
            }
            if !seen.insert(name.clone()) {
                return Err(SchemaError::DuplicateColumn(name));
            }
            let hive_type =
                HiveType::parse(type_text).map_err(|error| SchemaError::Type { column: name.clone(), error })?;
            out.push(Column { name, hive_type });
        }
        if out.is_empty() {
            return Err(SchemaError::NoColumns);
        }
        Ok(TableSchema { columns: out })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{SchemaError, TableSchema, COLUMNS_MAX};
    use crate::hive::HiveType;

    #[test]
    fn a_glue_table_gives_its_columns_in_order_and_not_its_partition_keys() {
        let table = json!({
            "Name": "events", "DatabaseName": "lake", "VersionId": "3",
            "StorageDescriptor": {"Columns": [
                {"Name": "ID", "Type": "bigint"},
                {"Name": "amount", "Type": "decimal(10,2)", "Comment": "in euros"},
                {"Name": "tags", "Type": "array<string>"}
            ]},
            "PartitionKeys": [{"Name": "day", "Type": "string"}]
        });
        let schema = TableSchema::from_glue_table(&table).unwrap();
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "amount", "tags"]);
        assert_eq!(schema.columns[1].hive_type, HiveType::Decimal { precision: 10, scale: 2 });
    }

    #[test]
    fn tables_that_cannot_be_written_are_refused_with_the_reason() {
        let table = |columns: serde_json::Value| json!({"StorageDescriptor": {"Columns": columns}});
        assert_eq!(TableSchema::from_glue_table(&table(json!([]))), Err(SchemaError::NoColumns));
        assert!(matches!(TableSchema::from_glue_table(&json!({"Name": "t"})), Err(SchemaError::Malformed(_))));
        assert!(matches!(
            TableSchema::from_glue_table(&table(json!([{"Name": "a"}]))),
            Err(SchemaError::Malformed(m)) if m.contains("no Type")
        ));
        assert_eq!(
            TableSchema::from_glue_table(&table(
                json!([{"Name": "a", "Type": "int"}, {"Name": "A", "Type": "string"}])
            )),
            Err(SchemaError::DuplicateColumn("a".into()))
        );
        assert!(matches!(
            TableSchema::from_glue_table(&table(json!([{"Name": "u", "Type": "uniontype<int>"}]))),
            Err(SchemaError::Type { column, .. }) if column == "u"
        ));
        let wide: Vec<(String, &str)> = (0..=COLUMNS_MAX).map(|i| (format!("c{i}"), "int")).collect();
        assert!(matches!(
            TableSchema::declared(wide.iter().map(|(n, t)| (n.as_str(), *t))),
            Err(SchemaError::TooManyColumns(_))
        ));
    }
}

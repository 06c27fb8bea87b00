"""br-int's OpenFlow pipeline: fields, flows as values, declared tables, compute, incremental engine, diff."""

.PHONY: run demo test bench faults fuzz fmt lint
run:   ## run api + worker against local PostgreSQL and Redis
	./scripts/run.sh
demo:  ## play realistic traffic against the running product (start `make run` first)
	./scripts/demo.sh
test:  ## every check and test
	./scripts/test.sh
bench: ## every benchmark, one table
	./scripts/bench.sh
faults: ## crash and outage suite against the release binaries; writes docs/faults/REPORT.md
	./scripts/faults.sh
fuzz:  ## schemathesis against the api's OpenAPI description for a few minutes; writes docs/fuzz/SUMMARY.md
	./scripts/fuzz.sh --record
fmt:
	cargo fmt --all
lint:
	cargo clippy --workspace --all-targets -- -D warnings

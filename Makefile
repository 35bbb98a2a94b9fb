.PHONY: run demo test bench fmt lint
run:   ## run api + worker against local PostgreSQL and Redis
	./scripts/run.sh
demo:  ## play realistic traffic against the running product (start `make run` first)
	./scripts/demo.sh
test:  ## every check and test
	./scripts/test.sh
bench: ## every benchmark, one table
	./scripts/bench.sh
fmt:
	cargo fmt --all
lint:
	cargo clippy --workspace --all-targets -- -D warnings

.PHONY: demo test bootstrap

demo:  ## run the movies scenario on embedded defaults (Ctrl-C to stop)
	@scripts/bootstrap
	.venv/bin/tidelake demo movies

test:  ## the whole test suite, installing and starting what it needs
	@scripts/test

bootstrap:
	@scripts/bootstrap

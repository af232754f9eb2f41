.PHONY: demo test bootstrap

demo:  ## run the movies scenario on embedded defaults (Ctrl-C to stop); installs runtime deps only
	@scripts/bootstrap --demo
	.venv/bin/tidelake demo movies

test:  ## the whole test suite, installing and starting what it needs
	@scripts/test

bootstrap:
	@scripts/bootstrap

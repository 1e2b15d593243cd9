"""One module per DVC stage; a stage never imports another stage (files are the contract)."""

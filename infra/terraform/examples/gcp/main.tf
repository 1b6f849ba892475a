# A complete deployment: build the package with `jitc package gcp --out dist`, add the control
# plane's Ed25519 public key to catalog.yaml, create the secrets the catalog names (their values
# stay out of Terraform's state), then `terraform init && terraform apply` here.

provider "google" {
  project = var.project_id
  region  = var.region
}

module "jitc" {
  source          = "../../gcp"
  project_id      = var.project_id
  region          = var.region
  package_path    = "${path.module}/../../../../dist/jit-connector-gcp.zip"
  catalog_file    = "${path.module}/catalog.yaml"
  intake_invokers = ["serviceAccount:${var.control_plane_invoker}"]
  kms_key_name    = var.kms_key_name
  vpc_connector   = var.vpc_connector
}

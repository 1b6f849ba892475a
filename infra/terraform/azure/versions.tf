terraform {
  required_version = ">= 1.5.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # zip_deploy_file on a Flex Consumption app must use OneDeploy (/api/publish); earlier 4.x
      # releases posted to /api/zipdeploy, which Flex does not serve (azurerm issue #29630,
      # fixed by pull request #31937). See README.md.
      version = ">= 4.60.0, < 5.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.5.0"
    }
  }
}

"""The importer service: one emulated device with a DMA engine behind an IOMMU."""
